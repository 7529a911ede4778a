"""The exchanges of an IKE SA as tasks (docs/ike.md "Tasks").

| module | exchange | task (we initiate) | answer (the peer initiates) |
|---|---|---|---|
| ike_init | IKE_SA_INIT (RFC 7296 1.2) | IkeInit | respond |
| ike_auth | IKE_AUTH (1.2, 2.15) + first CHILD SA | IkeAuth | respond |
| child_create | CREATE_CHILD_SA: new CHILD SA, CHILD rekey (1.3.1, 1.3.3) | ChildCreate | respond |
| ike_rekey | CREATE_CHILD_SA: IKE SA rekey (1.3.2, 2.18) | IkeRekey | respond |
| informational | INFORMATIONAL: Delete, liveness (1.4) | ChildDelete, IkeDelete, ... | respond |
"""
