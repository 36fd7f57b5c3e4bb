"""Email as bytes on the wire: templates, the message, signing, and transports.

- ``templates``: the sandboxed Jinja environment and the checks a template or subject must pass
- ``context``: what a template sees for one recipient, and ``step_message``, the one full rendering of a step
  used by sending, previews and test sends
- ``plans``: per-step render plans the sender fills per recipient (byte-identical to ``step_message``)
- ``compose``: MIME assembly, headers, Message-IDs (signed, so bounces prove they are ours)
- ``links``: tracked-link rewriting and storing what each token names
- ``dkim``: DKIM signing of outgoing messages
- ``transports``: SMTP (pipelining, TLS), Maildir and in-memory transports, with failure kinds
- ``factory``: the transport a URL names, DKIM-signing when a key is set
"""
