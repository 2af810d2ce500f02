"""The shipped configs (the paper's settings), installed as the package data of lightreasoner.configs."""
