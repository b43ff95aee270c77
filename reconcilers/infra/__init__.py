"""Infrastructure: typed Nickel resources reconciled through providers (the local host; AWS, UpCloud and any
libcloud compute driver in providers/)."""
