"""The schema version of every normfold JSON report (fold, validate, check, mode and the batch reports)."""

REPORT_VERSION = 1
