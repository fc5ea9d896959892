"""Air-gap bundles (issue #20): profile, engine images, weights and wheels in one tar,
verified end to end."""
