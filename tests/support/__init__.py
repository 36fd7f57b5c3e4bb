"""What the tests share, beyond the fixtures in tests/conftest.py.

- ``helpers``: a world to test in (sequences synced, a sender wired to an in-memory transport, signups and
  inline dispatch)
- ``processes``: real processes and servers (nurture web/worker/beat, an SMTP sink, free ports)
- ``web``: what the public-page tests read back: row counts, snapshots, the parts and links of a sent email
"""
