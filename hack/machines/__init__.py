"""The machines lab: Debian 12 machines with systemd and sshd in systemd-nspawn containers on a
bridge of their own (hack/machines.py; docs/machines.md)."""
