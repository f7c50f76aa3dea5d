"""UniMMVSR: reference-guided cascaded video super-resolution (paper 000; docs/design.md §2–6)."""
