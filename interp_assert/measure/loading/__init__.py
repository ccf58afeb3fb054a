"""Loading models: finding, converting and placing them, and mapping their parts."""
