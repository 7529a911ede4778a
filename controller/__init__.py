"""ipsecd controller: the only etcd client; policy API, agent streams, ipsecctl."""
