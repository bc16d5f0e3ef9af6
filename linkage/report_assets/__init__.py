"""Static files of the HTML report: its page template and the vendored vis-network build."""
