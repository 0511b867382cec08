"""AWS CDK app that deploys registry-proxy on Fargate behind an internal HTTPS load balancer."""

from registry_proxy_infra.config import ConfigError, ExistingVpc, ProxyStackConfig
from registry_proxy_infra.stack import RegistryProxyStack

__all__ = ["ConfigError", "ExistingVpc", "ProxyStackConfig", "RegistryProxyStack"]
