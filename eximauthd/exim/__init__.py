"""Reading Exim's own files: the mainlog auditor and the configuration linter."""
