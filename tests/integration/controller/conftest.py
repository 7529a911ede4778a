from tests.support.etcd import etcd_cluster, etcd_plaintext, etcd_server, etcd_session

__all__ = ["etcd_cluster", "etcd_plaintext", "etcd_server", "etcd_session"]
