"""The vault: encrypted secret manifests in the ops repo, and the daemon side that loads them.

A manifest (`secrets/**/*.yaml`) keeps keys and structure in clear and every value as an `ENC[...]` string.
Each file has a random data key; values are sealed with AES-256-GCM bound to their key path; the data key is
split over key groups (Shamir) and wrapped per recipient with a hybrid ML-KEM-768 + X25519 KEM; the whole file
is signed with ML-DSA-65 and Ed25519. Module map:

    errors.py      the error tree                     keys.py       key text forms, key files
    backends/      pluggable ML-KEM/ML-DSA providers  kem.py        the hybrid KEM combiner
    shamir.py      k-of-n split of the data key       manifest.py   the YAML format, ENC values, signed bytes
    envelope.py    seal/open/sign/verify a manifest    rules.py      creation rules + trusted signers (Nickel)
    check.py       the secret checks                  credentials.py  credential patterns for staged files
    merge.py       three-way merge of value trees     textconv.py   the `git diff` view
    editing.py     the safe $EDITOR flow              keysource.py  the daemon's own key
    init.py        `stratum init` wiring              reconciler.py the daemon-side reconciler
"""
