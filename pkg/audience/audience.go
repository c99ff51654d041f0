// Package audience parses and evaluates the audiences of group messages:
// tag expressions such as `vip && (cn || hk) && !churned`, and the platform,
// topic and "all" filters of an internalv1.Audience.
//
// Syntax: tag names are 1 to 64 bytes of [A-Za-z0-9_.:-]; the operators are
// `!` (not), `&&` (and) and `||` (or), in that order of precedence, with
// parentheses for grouping and any whitespace between tokens. An expression
// is at most MaxExprBytes long, names at most MaxTerms tags, and nests
// parentheses and negations at most MaxDepth deep.
//
// A group message matches on the device's tags and topics at delivery time:
// a device that gains a tag after the send, while the message is still
// live, receives it when it next connects.
package audience

import (
	"fmt"
	"slices"
	"strings"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

// Limits of a tag expression.
const (
	MaxExprBytes = 1024 // source length
	MaxTerms     = 64   // tag names in one expression (repeats count)
	MaxDepth     = 16   // nesting of parentheses and negations
	MaxNameBytes = 64   // length of a tag or topic name
)

// SyntaxError is why a tag expression does not parse. It wraps
// herald.ErrInvalidArgument.
type SyntaxError struct {
	Pos int    // byte offset in the source
	Msg string // what is wrong, without the position
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("tag expression: %s at byte %d", e.Msg, e.Pos)
}

// Unwrap lets errors.Is(err, herald.ErrInvalidArgument) hold.
func (e *SyntaxError) Unwrap() error { return herald.ErrInvalidArgument }

// ValidName reports whether s is a valid tag or topic name.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '.' || c == ':' || c == '-'
}

type op uint8

const (
	opTag op = iota
	opNot
	opAnd
	opOr
)

// Expr is a parsed tag expression. It is immutable and safe for concurrent use.
type Expr struct {
	root *node
	tags []string // distinct, sorted
}

type node struct {
	op   op
	tag  string  // opTag
	kids []*node // opNot: 1; opAnd, opOr: >= 2
}

// Parse parses a tag expression.
func Parse(src string) (*Expr, error) { return parse(src, MaxExprBytes) }

func parse(src string, maxBytes int) (*Expr, error) {
	if len(src) > maxBytes {
		return nil, &SyntaxError{Pos: maxBytes, Msg: fmt.Sprintf("expression longer than %d bytes", maxBytes)}
	}
	p := &parser{src: src}
	p.skipSpace()
	if p.pos == len(src) {
		return nil, &SyntaxError{Pos: p.pos, Msg: "empty expression"}
	}
	root, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.pos < len(src) {
		if src[p.pos] == ')' {
			return nil, &SyntaxError{Pos: p.pos, Msg: "unbalanced ')'"}
		}
		return nil, &SyntaxError{Pos: p.pos, Msg: fmt.Sprintf("expected '&&', '||' or the end, found %s", p.describe())}
	}
	slices.Sort(p.tags)
	return &Expr{root: root, tags: slices.Compact(p.tags)}, nil
}

type parser struct {
	src   string
	pos   int
	terms int
	tags  []string
}

func (p *parser) skipSpace() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// describe names the token at p.pos for error messages.
func (p *parser) describe() string {
	if p.pos >= len(p.src) {
		return "the end"
	}
	c := p.src[p.pos]
	switch {
	case c == '&' || c == '|':
		if p.pos+1 < len(p.src) && p.src[p.pos+1] == c {
			return fmt.Sprintf("'%c%c'", c, c)
		}
		return fmt.Sprintf("'%c' (operators are '&&' and '||')", c)
	case nameByte(c):
		return "a tag"
	case c >= 0x20 && c < 0x7f:
		return fmt.Sprintf("'%c'", c)
	default:
		return fmt.Sprintf("byte 0x%02x", c)
	}
}

// peek2 reports whether the two bytes at p.pos are s.
func (p *parser) peek2(s string) bool {
	return p.pos+1 < len(p.src) && p.src[p.pos] == s[0] && p.src[p.pos+1] == s[1]
}

func (p *parser) or(depth int) (*node, error) {
	n, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.peek2("||") {
		p.pos += 2
		p.skipSpace()
		r, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		n = join(opOr, n, r)
	}
	return n, nil
}

func (p *parser) and(depth int) (*node, error) {
	n, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for p.peek2("&&") {
		p.pos += 2
		p.skipSpace()
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		n = join(opAnd, n, r)
	}
	return n, nil
}

// join builds l <o> r, flattening chains of the same operator.
func join(o op, l, r *node) *node {
	if l.op == o {
		l.kids = append(l.kids, r)
		return l
	}
	return &node{op: o, kids: []*node{l, r}}
}

func (p *parser) unary(depth int) (*node, error) {
	if p.pos >= len(p.src) {
		return nil, &SyntaxError{Pos: p.pos, Msg: "expected a tag or '(' but found the end"}
	}
	switch c := p.src[p.pos]; {
	case c == '!':
		if depth+1 > MaxDepth {
			return nil, &SyntaxError{Pos: p.pos, Msg: fmt.Sprintf("nesting deeper than %d", MaxDepth)}
		}
		p.pos++
		p.skipSpace()
		k, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		if k.op == opNot { // !!x is x
			return k.kids[0], nil
		}
		return &node{op: opNot, kids: []*node{k}}, nil
	case c == '(':
		if depth+1 > MaxDepth {
			return nil, &SyntaxError{Pos: p.pos, Msg: fmt.Sprintf("nesting deeper than %d", MaxDepth)}
		}
		open := p.pos
		p.pos++
		p.skipSpace()
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.pos >= len(p.src) {
			return nil, &SyntaxError{Pos: open, Msg: "unbalanced '('"}
		}
		if p.src[p.pos] != ')' {
			return nil, &SyntaxError{Pos: p.pos, Msg: fmt.Sprintf("expected '&&', '||' or ')', found %s", p.describe())}
		}
		p.pos++
		p.skipSpace()
		return n, nil
	case nameByte(c):
		start := p.pos
		for p.pos < len(p.src) && nameByte(p.src[p.pos]) {
			p.pos++
		}
		if p.pos-start > MaxNameBytes {
			return nil, &SyntaxError{Pos: start, Msg: fmt.Sprintf("tag longer than %d bytes", MaxNameBytes)}
		}
		p.terms++
		if p.terms > MaxTerms {
			return nil, &SyntaxError{Pos: start, Msg: fmt.Sprintf("more than %d tags", MaxTerms)}
		}
		name := p.src[start:p.pos]
		p.tags = append(p.tags, name)
		p.skipSpace()
		return &node{op: opTag, tag: name}, nil
	case c == ')':
		return nil, &SyntaxError{Pos: p.pos, Msg: "expected a tag or '(' but found ')'"}
	default:
		return nil, &SyntaxError{Pos: p.pos, Msg: fmt.Sprintf("expected a tag or '(' but found %s", p.describe())}
	}
}

// Match evaluates the expression; has reports whether the device has a tag.
// It does not allocate.
func (e *Expr) Match(has func(tag string) bool) bool {
	return e.root.eval(has, nil)
}

// MatchSorted evaluates the expression against a sorted tag list. It does
// not allocate.
func (e *Expr) MatchSorted(tags []string) bool {
	return e.root.eval(nil, tags)
}

// eval uses has when it is set, else a binary search of sorted.
func (n *node) eval(has func(string) bool, sorted []string) bool {
	switch n.op {
	case opTag:
		if has != nil {
			return has(n.tag)
		}
		return contains(sorted, n.tag)
	case opNot:
		return !n.kids[0].eval(has, sorted)
	case opAnd:
		for _, k := range n.kids {
			if !k.eval(has, sorted) {
				return false
			}
		}
		return true
	default: // opOr
		for _, k := range n.kids {
			if k.eval(has, sorted) {
				return true
			}
		}
		return false
	}
}

func contains(sorted []string, s string) bool {
	_, ok := slices.BinarySearch(sorted, s)
	return ok
}

// Tags returns the distinct tag names the expression mentions, sorted. The
// caller must not modify the slice.
func (e *Expr) Tags() []string { return e.tags }

// String returns the expression in a normal form (single spaces around
// operators, only the parentheses precedence needs, double negations
// removed) that parses to an equivalent expression.
func (e *Expr) String() string {
	var b strings.Builder
	e.root.write(&b)
	return b.String()
}

func (n *node) write(b *strings.Builder) {
	switch n.op {
	case opTag:
		b.WriteString(n.tag)
	case opNot:
		b.WriteByte('!')
		n.kids[0].writeOperand(b, opNot)
	default:
		sep := " && "
		if n.op == opOr {
			sep = " || "
		}
		for i, k := range n.kids {
			if i > 0 {
				b.WriteString(sep)
			}
			k.writeOperand(b, n.op)
		}
	}
}

// writeOperand writes n as an operand of parent, in parentheses when n
// binds less tightly than parent.
func (n *node) writeOperand(b *strings.Builder, parent op) {
	if n.op == opTag || n.op < parent || n.op == opNot {
		n.write(b)
		return
	}
	b.WriteByte('(')
	n.write(b)
	b.WriteByte(')')
}

// MatchDevice reports whether a device with the given platform, tags and
// topics (both sorted) is in the audience a. e is a's parsed tag expression
// (it may be nil when a.TagExpr is empty; when it is nil for a non-empty
// TagExpr, the expression is parsed here, which allocates). A nil audience,
// or one with nothing set, matches nobody; an unparsable expression matches
// nobody.
func MatchDevice(a *internalv1.Audience, e *Expr, platform string, tags, topics []string) bool {
	if a == nil {
		return false
	}
	if a.GetPlatform() != "" && a.GetPlatform() != platform {
		return false
	}
	switch {
	case a.GetAll():
		return true
	case a.GetTopic() != "":
		return contains(topics, a.GetTopic())
	case a.GetTagExpr() != "":
		if e == nil {
			var err error
			if e, err = Parse(a.GetTagExpr()); err != nil {
				return false
			}
		}
		return e.MatchSorted(tags)
	default:
		return false
	}
}
