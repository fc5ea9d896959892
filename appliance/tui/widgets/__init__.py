"""Reusable widgets: each is given a core object and draws it; none of them probes."""
