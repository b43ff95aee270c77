# English texts of forms/local-service.toml: the form's own texts are the English ones; a message here
# overrides them (the Spanish bundle beside this one has every message).
form-title = A new local service
