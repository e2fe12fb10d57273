package agentproc

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"overtime/agent"
)

// Client reads an agent's HTTP endpoints: /metrics and the JSON API.
type Client struct {
	// Addr is the agent's listen address (host:port).
	Addr string
	http *http.Client
}

// NewClient reads the agent listening on addr.
func NewClient(addr string) Client {
	return Client{Addr: addr, http: &http.Client{Timeout: 30 * time.Second}}
}

// Get returns the body of path; a status other than 200 is an error.
func (c Client) Get(path string) ([]byte, error) {
	resp, err := c.http.Get("http://" + c.Addr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return body, nil
}

// GetJSON decodes the JSON body of path into v.
func (c Client) GetJSON(path string, v any) error {
	body, err := c.Get(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// Processes is the agent's process table (/api/v1/processes).
func (c Client) Processes() ([]agent.ProcessInfo, error) {
	var out []agent.ProcessInfo
	return out, c.GetJSON("/api/v1/processes", &out)
}

// Actions is the agent's action log (/api/v1/actions).
func (c Client) Actions() ([]agent.Action, error) {
	var out []agent.Action
	return out, c.GetJSON("/api/v1/actions", &out)
}

// MetricsText is /metrics as exposed.
func (c Client) MetricsText() (string, error) {
	b, err := c.Get("/metrics")
	return string(b), err
}

// Metrics is one scrape of /metrics, parsed.
func (c Client) Metrics() (Metrics, error) {
	text, err := c.MetricsText()
	if err != nil {
		return Metrics{}, err
	}
	return ParseMetrics(text)
}
