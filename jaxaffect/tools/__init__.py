"""Command-line tools that read workdirs (results, metrics); they import no model or trainer."""
