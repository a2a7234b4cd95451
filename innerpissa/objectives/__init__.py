"""What the shared loop (`loop.Loop`) minimises: the ReprPO hidden-state objective (`reprpo`) and the DPO / BiPO
output-level objective (`dpo`)."""
