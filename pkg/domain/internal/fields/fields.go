// Package fields holds libvirtxml's structs as types without methods, so
// that pkg/domain can embed one and shadow some of its fields while
// encoding/xml decodes the rest as libvirtxml would. The names are exported
// because encoding/xml reaches methods of nested fields only through
// exported embedded fields.
package fields

import "libvirt.org/go/libvirtxml"

// Devices is libvirtxml.DomainDeviceList without its methods.
type Devices libvirtxml.DomainDeviceList
