"""Reports built by Celery: CSV usage exports (streamed), PDF spend reports and monthly
statements, with signed expiring download links. See docs/analytics.md."""
