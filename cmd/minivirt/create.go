package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

func (a *app) createCommand() *cobra.Command {
	var (
		image, imageSHA, memory, diskSize, userName, userData, networkConfig, network string
		vcpus                                                                         uint
		sshKeys, vmchannels, forwards                                                 []string
		uefi, printXML, start                                                         bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME --image FILE|URL",
		Short: "Define a domain from a cloud image (cloud-init), with a user you can ssh in as",
		Long: `Define a domain from a cloud image (Debian genericcloud, Ubuntu cloudimg, Fedora Cloud).

The image is never written: the domain gets a qcow2 overlay on it in the state
directory. A NoCloud seed (ISO 9660, volume "cidata", on virtio) makes one user
with passwordless sudo and your keys (or a key pair minivirt makes for the
domain), and gives the guest an SSH host key minivirt knows, so "minivirt ssh
NAME" logs in with strict host-key checking and no TCP port on the host.
--user-data: a #cloud-config of your own is merged with minivirt's (cloud-init
merges the two parts); anything else (a shell script, a MIME archive) is passed
on as its own part, unchanged. undefine removes what create made, and never the
image or a file you gave.`,
		Example: `  minivirt create web --image debian-12-genericcloud-amd64.qcow2 --start
  minivirt create db --image https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2 \
      --memory 2GiB --vcpus 2 --disk-size 20GiB --forward 127.0.0.1:5432:5432
  minivirt create t --image img.qcow2 --print-xml`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if image == "" {
				return fmt.Errorf("create: --image FILE|URL is required")
			}
			opt := manager.CreateOptions{Name: args[0], Image: image, ImageSHA256: imageSHA, VCPUs: vcpus, UEFI: uefi}
			var err error
			if opt.MemoryKiB, err = domain.ParseMemory(memory); err != nil {
				return fmt.Errorf("create: --memory: %w", err)
			}
			if vcpus < 1 || vcpus > 255 {
				return fmt.Errorf("create: --vcpus %d: must be 1-255", vcpus)
			}
			if diskSize != "" {
				kib, err := domain.ParseMemory(diskSize)
				if err != nil {
					return fmt.Errorf("create: --disk-size: %w", err)
				}
				opt.DiskSize = uint64(kib) << 10
			}
			switch network {
			case "netstack":
			case "user":
				opt.UserNetwork = true
			default:
				return fmt.Errorf("create: --network %q: netstack (isolated, the default) or user (NAT to the outside)", network)
			}
			if opt.User = userName; opt.User == "" {
				opt.User = defaultUser()
			}
			for _, f := range sshKeys {
				data, err := os.ReadFile(f)
				if err != nil {
					return fmt.Errorf("create: --ssh-key: %w", err)
				}
				for _, line := range strings.Split(string(data), "\n") {
					if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
						opt.SSHKeys = append(opt.SSHKeys, line)
					}
				}
			}
			for flag, dst := range map[string]*[]byte{userData: &opt.UserData, networkConfig: &opt.NetworkConfig} {
				if flag == "" {
					continue
				}
				if *dst, err = os.ReadFile(flag); err != nil {
					return fmt.Errorf("create: %w", err)
				}
			}
			for _, v := range vmchannels {
				vc, err := parseVMChannelFlag(v)
				if err != nil {
					return err
				}
				opt.VMChannels = append(opt.VMChannels, vc)
			}
			for _, v := range forwards {
				f, err := parseForwardFlag(v)
				if err != nil {
					return err
				}
				opt.Forwards = append(opt.Forwards, f)
			}
			if printXML {
				out, err := a.mgr.CreateXML(opt)
				if err != nil {
					return userError(err)
				}
				_, err = a.stdout.Write(out)
				return err
			}
			if isTerminal(os.Stderr) {
				opt.Progress = a.stderr
			}
			d, err := a.mgr.Create(cmd.Context(), opt)
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s defined from %s (user %s)\n", d.Name, image, opt.User)
			if !start {
				return nil
			}
			warnings, err := a.mgr.Start(cmd.Context(), d.Name, manager.StartOptions{})
			for _, w := range warnings {
				a.warn("%s", w)
			}
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s started; log in with: minivirt ssh %s\n", d.Name, d.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "the cloud image: a file, or an http(s) URL fetched once into the state directory")
	f.StringVar(&imageSHA, "image-sha256", "", "the image's sha256 (hex), checked before use")
	f.StringVar(&memory, "memory", "1GiB", "memory, in libvirt's units (512MiB, 2GiB, ...)")
	f.UintVar(&vcpus, "vcpus", 2, "virtual CPUs")
	f.StringVar(&diskSize, "disk-size", "", "grow the disk to this size (default: the image's size)")
	f.StringArrayVar(&sshKeys, "ssh-key", nil, "a public key file to log in with (repeatable; default: a key pair minivirt makes)")
	f.StringVar(&userName, "user", "", "the guest user (default: your login name; minivirt for root)")
	f.StringVar(&userData, "user-data", "", "your own cloud-init user-data: a #cloud-config is merged with minivirt's, anything else is passed on as is")
	f.StringVar(&networkConfig, "network-config", "", "a cloud-init network-config, written to the seed as given")
	f.StringArrayVar(&vmchannels, "vmchannel", nil, "PORT:PATH: guest connections to 10.0.2.4:PORT reach the Unix socket PATH (repeatable)")
	f.StringArrayVar(&forwards, "forward", nil, "[ADDR:]PORT:GUESTPORT or PATH:GUESTPORT: host connections reach the guest's port (repeatable)")
	f.StringVar(&network, "network", "netstack", "netstack: minivirt's own, isolated network; user: QEMU's, with NAT to the outside")
	f.BoolVar(&uefi, "uefi", false, "boot with UEFI firmware (OVMF) instead of BIOS")
	f.BoolVar(&printXML, "print-xml", false, "print the domain XML and make or define nothing")
	f.BoolVar(&start, "start", false, "start the domain once it is defined")
	return cmd
}

// defaultUser is the guest user when none is given: the invoking user's
// login name, minivirt for root.
func defaultUser() string {
	if os.Geteuid() == 0 {
		return "minivirt"
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "minivirt"
}

// parseVMChannelFlag reads --vmchannel PORT:PATH.
func parseVMChannelFlag(v string) (domain.VMChannel, error) {
	port, path, ok := strings.Cut(v, ":")
	n, err := strconv.ParseUint(port, 10, 32)
	if !ok || err != nil || path == "" {
		return domain.VMChannel{}, fmt.Errorf("create: --vmchannel %q: give PORT:PATH, e.g. 600:/run/svc.sock", v)
	}
	p, err := domain.Port("create: --vmchannel port", uint(n))
	return domain.VMChannel{Port: p, Path: path}, err
}

// parseForwardFlag reads --forward [ADDR:]PORT:GUESTPORT or PATH:GUESTPORT.
func parseForwardFlag(v string) (domain.Forward, error) {
	i := strings.LastIndexByte(v, ':')
	bad := fmt.Errorf("create: --forward %q: give [ADDR:]PORT:GUESTPORT or PATH:GUESTPORT, e.g. 2222:22 or /run/web.sock:80", v)
	if i < 0 {
		return domain.Forward{}, bad
	}
	host, guest := v[:i], v[i+1:]
	n, err := strconv.ParseUint(guest, 10, 32)
	if err != nil || host == "" {
		return domain.Forward{}, bad
	}
	gport, err := domain.Port("create: --forward guest port", uint(n))
	if err != nil {
		return domain.Forward{}, err
	}
	f := domain.Forward{GuestPort: gport}
	if strings.HasPrefix(host, "/") {
		f.Path = host
		return f, nil
	}
	if f.Listen, err = domain.ParseListen(host); err != nil {
		return domain.Forward{}, fmt.Errorf("create: --forward %q: %w", v, err)
	}
	return f, nil
}

// isTerminal says whether f is a terminal, where a progress bar belongs.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
