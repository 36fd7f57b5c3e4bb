"""Sequences: definitions, versions, timing, and results.

Files ``*.yaml`` here are the shipped sequences; ``loader`` reads and validates them.

- ``loader``: YAML → a validated ``SequenceDefinition``; ``policy``: re-entry and ambiguity rules per sequence
- ``conditions``, ``variants``, ``review``: conditional steps, A/B variants, the reviewed-by line
- ``sync``: files → immutable versions in the database, and reading them back
- ``version_plans``: what a publish will do to each enrollment in flight (stay, move, stop), and diffs
- ``versions``: drafts, publishing a plan (stay/move), archiving
- ``control``: pause, resume and schedule a whole sequence
- ``schedule``: pure due-time arithmetic (delays, send windows, zones)
- ``holidays``: public-holiday calendars that close send windows
- ``timetable``: the one place that turns a version into due times for a person
- ``condition_facts``: what a batch's conditional steps look at, read in grouped queries
- ``results``, ``experiments``, ``figures_over_time``: per-step results, per-variant tests, figures per day
"""
