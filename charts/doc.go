// Package charts holds the tests of the Helm chart in charts/overtime: lint,
// strict decoding of every rendered manifest into its Kubernetes type, the
// DaemonSet's security posture, the rendered agent config, the alert rules
// (promtool check and unit tests) and the dashboard's PromQL. The package
// has no code of its own.
package charts
