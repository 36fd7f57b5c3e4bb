"""People: how they join, what they chose, and everything that ends or changes their mail.

- ``signup``, ``signup_statements``: the signup transaction (form → subscriber, consent, confirmation)
- ``consent``: the exact wording a person agreed to, kept as a record
- ``confirmation``: queueing the double opt-in email in the signup's transaction
- ``enrollment``: adding a subscriber, enrolling in a sequence, ending enrollments (unsubscribe)
- ``reentry``: what a new signup does for someone who was in the sequence before
- ``preferences``: the preferences page's changes (zone, pause, sequences)
- ``goals``: events that end an enrollment because the person acted
- ``clicks``: recording clicks and opens on tracked links
- ``bounces``: bounce reports (RFC 3464 and others) and what they do
- ``suppression``: the one suppression list: add, check, erasure hashes
- ``staff_actions``: what staff may do to one person (pause, resume, unsubscribe, erase, export)
- ``listing``: the staff subscriber list: filtered, sorted, paginated
- ``import_files``: an uploaded CSV read into checked rows, each refusal with its line and reason
- ``importer``: writing imported rows in chunks, and enrolling existing subscribers in bulk
- ``exports``: every subscriber as CSV
- ``erasure``: GDPR erasure (an anonymous suppression hash stays)
- ``retention``: forgetting signups never confirmed
"""
