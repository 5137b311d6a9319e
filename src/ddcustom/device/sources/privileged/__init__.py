"""The privileged reader: what an unprivileged component may learn about other users' processes through a
small root process that answers four fixed questions (protocol.py), and nothing else."""
