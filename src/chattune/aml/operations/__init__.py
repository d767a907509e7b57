"""The operation groups of `MLClient`: models, compute, components, jobs, online endpoints
and deployments. Each maps the seed's calls onto chattune's services."""
