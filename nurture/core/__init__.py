"""Foundations every area stands on; nothing here imports another nurture package.

- ``config``: every setting, from the environment, with safe development defaults (``get_settings``)
- ``db``: engines, sessions, one ``transaction`` helper, retries on serialization failures
- ``clock``: the one clock (the database's, for leases), time zones, a test clock
- ``logs``: log lines in text or JSON, tokens scrubbed from URLs
- ``tokens``: signed, purpose-scoped tokens for the links in emails
- ``addresses``: the one validation of emails, names and zones for every way in
- ``ids``: strict parsing of numeric ids from paths and forms
- ``safe_csv``: CSV a spreadsheet reads as data, never as formulas
- ``dkim_keys``: the DKIM private key file, read and checked at start
- ``migrate``: Alembic upgrades, run by ``nurture db upgrade`` and ``nurture run``
"""
