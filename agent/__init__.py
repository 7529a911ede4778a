"""ipsecd node agent: follows the controller (or -f FILE), reconciles XFRM, runs IKE."""
