"""Reports that read finished run directories: the self-contained HTML page of `ponder report`.
May import `runs` and everything below it."""
