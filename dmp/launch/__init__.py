"""Starting clusters on hosts (internal): ``dmp ssh`` and the remote side it runs."""
