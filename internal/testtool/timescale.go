package testtool

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// TimeScaleEnv names the factor by which the real-kernel tests stretch
// their time budgets: the VM runner's guests (test/vm) set it, because
// under qemu TCG CPU-bound work (exec, fork, the eBPF verifier at the
// agent's start) runs about 15 times slower than on a host. Unset, it is 1:
// on a host every test keeps the budgets it states.
const TimeScaleEnv = "OVERTIME_TIME_SCALE"

var timeScale = sync.OnceValues(func() (float64, error) {
	s := os.Getenv(TimeScaleEnv)
	if s == "" {
		return 1, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 1 || f > 100 {
		return 0, fmt.Errorf("%s=%q: want a number from 1 to 100", TimeScaleEnv, s)
	}
	return f, nil
})

// TimeScale is the factor of TimeScaleEnv (1 when unset). A bad value
// panics, naming the variable: a test run with budgets it did not mean is
// worse than none.
func TimeScale() float64 {
	f, err := timeScale()
	if err != nil {
		panic(err)
	}
	return f
}

// Scaled is d stretched by TimeScale: a test's budget for work that takes
// CPU (a wait for processes to run, the agent to start), and every
// deadline and window of time the test asserts that must hold such work.
// On a host (scale 1) it is d.
func Scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) * TimeScale())
}
