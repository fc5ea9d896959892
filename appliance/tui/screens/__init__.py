"""One module per screen: Box, Recommend, Deploy, Monitor, Logs, Keys, Help."""
