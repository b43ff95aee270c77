"""`stratum secret init`: the first secret of a repository in one step, without pasting 2 KB keys by hand.

 1. the user's key pair: the existing one, else a new `default.key` in the keys directory (0600);
 2. the daemon's recipient, from its key in the data directory (made on first use, as `daemon-key` does);
 3. secrets/rules.ncl: the user as the trusted signer, one `^secrets/` rule for the user and the daemon;
 4. staged (or committed with --commit) by the CLI.
Rules that already trust someone or name recipients are never overwritten: changing them is a rules change
that a trusted signer signs (`stratum secret sign-rules`).
"""

from __future__ import annotations

import json
import re

from reconcilers.vault.keys import Recipient, Signer
from reconcilers.vault.rules import Rules

HEADER = """\
# Creation rules and trusted signers for the encrypted manifests under secrets/ (contract: nickel/vault.ncl).
# Written by `stratum secret init`. Keys are long; their short ids (fingerprints) are in the comments.
#
#   stratum secret edit secrets/app.yaml       # create or edit a manifest through $EDITOR
#   stratum secret check                       # what the pre-commit hook and the daemon check
#   stratum secret sign-rules                  # after changing this file: a trusted signer signs the change
#
# The first rule whose path_regex matches a manifest's repo-relative path decides its recipients. Use
# `key_groups` + `shamir_threshold` to require several teams: any `shamir_threshold` of the groups can decrypt.
# Only manifests signed by a trusted signer are accepted, and a change to this file only when it is signed
# (secrets/rules.ncl.sig) by a signer these rules trusted before the change.
"""


def signer_name(raw: str) -> str:
    """A Nickel-safe signer name from a git user name or login (`Ann Lee` -> `ann-lee`)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", raw.strip().lower()).strip("-")
    return name or "me"


def is_empty(rules: Rules | None) -> bool:
    """True when the rules trust nobody and name no recipients (the template's starting point)."""
    return rules is None or (not rules.signers and not rules.rules)


def render_rules(name: str, signer: Signer, recipients: list[tuple[str, Recipient]]) -> str:
    """secrets/rules.ncl trusting `signer` as `name`, one `^secrets/` rule for the labelled recipients."""
    lines = [HEADER + "{", "  trusted_signers = [",
             f"    # {name}: {signer.fingerprint}",
             f"    {{ name = {json.dumps(name)}, key = {json.dumps(signer.text)} }},",
             "  ],", "  creation_rules = [", "    {", '      path_regex = "^secrets/",', "      recipients = ["]
    for label, recipient in recipients:
        lines += [f"        # {label}: {recipient.fingerprint}", f"        {json.dumps(recipient.text)},"]
    lines += ["      ],", "    },", "  ],", "}", ""]
    return "\n".join(lines)
