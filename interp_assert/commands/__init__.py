"""The ``interp-assert`` command and its verbs: discover, report, audit, measure, track."""
