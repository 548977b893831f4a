"""The deploy/ files: compose and Kubernetes schemas, images, Prometheus rules, the dashboard."""
