"""Analysis of results files. Never imports torch: reports and notebooks stay light."""
