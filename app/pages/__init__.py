"""The small HTML pages that links in emails open."""
