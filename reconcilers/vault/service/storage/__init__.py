"""Storage backends behind one interface (base.KeyValueStore): file (default), postgresql, etcd."""
