"""Staff: accounts and what they did.

- ``accounts``: passwords (argon2id), API tokens, login throttling, the audit log (``audit`` is the one
  helper every staff action writes through)
- ``first_admin``: the one-time setup link that creates the first admin in the browser
- ``jobs``: long staff work (imports, exports, enrolling thousands) with progress a person can watch
"""
