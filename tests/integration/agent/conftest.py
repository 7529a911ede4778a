from tests.support.etcd import etcd_session

__all__ = ["etcd_session"]
