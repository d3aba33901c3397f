package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// pgQuery speaks just enough of PostgreSQL's wire protocol (v3, trust
// authentication) to run one simple query as user postgres and print the
// first column of its first row: a real answer from a real server, with
// no client library in the image.
func pgQuery(addr, query string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))

	params := "user\x00postgres\x00database\x00postgres\x00\x00"
	startup := make([]byte, 8, 8+len(params))
	binary.BigEndian.PutUint32(startup, uint32(8+len(params)))
	binary.BigEndian.PutUint32(startup[4:], 3<<16)
	if _, err := conn.Write(append(startup, params...)); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	if err := pgUntilReady(r); err != nil {
		return fmt.Errorf("start-up: %w", err)
	}
	q := append([]byte(query), 0)
	msg := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], uint32(4+len(q)))
	if _, err := conn.Write(append(msg, q...)); err != nil {
		return err
	}
	var first string
	seen := false
	for {
		typ, body, err := pgMessage(r)
		if err != nil {
			return err
		}
		switch typ {
		case 'D':
			if !seen && len(body) >= 6 {
				n := int32(binary.BigEndian.Uint32(body[2:6]))
				if n >= 0 && int(n) <= len(body)-6 {
					first, seen = string(body[6:6+n]), true
				}
			}
		case 'E':
			return fmt.Errorf("query error: %q", body)
		case 'Z':
			if !seen {
				return fmt.Errorf("the query returned no row")
			}
			fmt.Println(first)
			return nil
		}
	}
}

// pgUntilReady reads the server's start-up answers until ReadyForQuery.
func pgUntilReady(r *bufio.Reader) error {
	for {
		typ, body, err := pgMessage(r)
		if err != nil {
			return err
		}
		switch typ {
		case 'R':
			if len(body) < 4 || binary.BigEndian.Uint32(body) != 0 {
				return fmt.Errorf("the server wants a password (authentication %x); netcheck speaks trust only", body)
			}
		case 'E':
			return fmt.Errorf("server error: %q", body)
		case 'Z':
			return nil
		}
	}
}

func pgMessage(r *bufio.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 1<<20 {
		return 0, nil, fmt.Errorf("bad message length %d", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}
