"""Linux's own stateful middlebox (netfilter: conntrack, nftables, kube-proxy's iptables
rules) as the testbed configures it on a router host, and what the Tracking Agent asks of it
(`netfilter.py` builds rule sets and conntrack commands; nothing here runs them)."""
