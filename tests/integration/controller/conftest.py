from tests.support.etcd import etcd_server, etcd_session

__all__ = ["etcd_server", "etcd_session"]
