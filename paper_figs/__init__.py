"""paper_figs: one entry per figure and table of the paper, reading run directories."""
