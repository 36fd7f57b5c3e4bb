"""Pages a prospect reaches, one module per page group.

- ``landing``: ``/``, links to the signup form, the staff UI and (in development) the dev mailbox
- ``subscribe``: the signup form, hosted and embedded, and its JSON twin
- ``email_links``: the pages email links open: confirm, unsubscribe (RFC 8058 one-click included)
- ``preferences``: the preferences page
- ``tracking``: ``/l/{token}`` redirects and ``/o/{token}`` pixels
- ``forms``, ``pages``: form parsing and page rendering shared by the above
- ``unavailable``: the friendly page when the database is down
"""
