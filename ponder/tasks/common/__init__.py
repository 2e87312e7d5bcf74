"""What several task wings share: readers of the published puzzle files (Sudoku-Extreme, Maze-Hard)
and the Hugging Face cache lookup. May import `core`; never a wing."""
