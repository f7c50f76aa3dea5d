"""UniMMVSR: reference-guided cascaded video super-resolution (paper 000; SPEC §1)."""
