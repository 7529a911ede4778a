"""Generated gRPC/protobuf code for package ipsecd.v1 (make proto). Do not edit."""
