package cluster

import "path/filepath"

// The users kube-controller-manager and kube-scheduler authenticate as; the
// apiserver's bootstrap RBAC binds their roles to these names.
const (
	controllerManagerUser = "system:kube-controller-manager"
	schedulerUser         = "system:kube-scheduler"
)

// controllerUsers adds the token users of the controllers that opts runs.
func controllerUsers(opts Options) []User {
	users := opts.Users
	if opts.ControllerManager != "" {
		users = append(users, User{Name: controllerManagerUser})
	}
	if opts.Scheduler != "" {
		users = append(users, User{Name: schedulerUser})
	}
	return users
}

// startControllers starts kube-controller-manager and kube-scheduler when
// the options name them. They serve no port of their own (--secure-port=0)
// and run without leader election; startup is not waited for: their effects
// (ServiceAccounts, scheduled pods) are what callers wait for.
func (c *Cluster) startControllers() error {
	if c.opts.ControllerManager != "" {
		err := c.startController("kube-controller-manager", c.opts.ControllerManager, controllerManagerUser,
			// Each controller uses its own ServiceAccount's token, as kubeadm
			// sets it up, so the bootstrap roles of every controller apply.
			"--use-service-account-credentials=true",
			"--service-account-private-key-file="+filepath.Join(c.dir, "sa.key"),
			// Published as kube-root-ca.crt in every namespace: what
			// in-cluster clients verify the apiserver with.
			"--root-ca-file="+filepath.Join(c.dir, "certs", "apiserver.crt"),
		)
		if err != nil {
			return err
		}
	}
	if c.opts.Scheduler != "" {
		if err := c.startController("kube-scheduler", c.opts.Scheduler, schedulerUser); err != nil {
			return err
		}
	}
	return c.ControllersExited()
}

// startController starts one controller binary as user, with args after
// the flags every controller gets.
func (c *Cluster) startController(name, binary, user string, args ...string) error {
	kubeconfig, err := c.KubeconfigFor(user)
	if err != nil {
		return err
	}
	common := []string{"--kubeconfig=" + kubeconfig, "--secure-port=0", "--leader-elect=false", "--profiling=false", "--v=1"}
	p, err := startProcess(name, filepath.Join(c.dir, name+".log"), binary, append(common, args...)...)
	if err != nil {
		return err
	}
	c.controllers = append(c.controllers, p)
	return nil
}

// ControllersExited returns an error describing a controller that has
// exited, or nil while they all run.
func (c *Cluster) ControllersExited() error {
	for _, p := range c.controllers {
		if err := p.exitError(); err != nil {
			return err
		}
	}
	return nil
}
