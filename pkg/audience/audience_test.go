package audience

import (
	"errors"
	"math"
	"strings"
	"testing"

	herald "github.com/heraldpush/herald"
	"github.com/heraldpush/herald/pkg/envelope/internalv1"
)

func mustParse(tb testing.TB, src string) *Expr {
	tb.Helper()
	e, err := Parse(src)
	if err != nil {
		tb.Fatalf("Parse(%q): %v", src, err)
	}
	return e
}

func hasOf(tags ...string) func(string) bool {
	return func(t string) bool {
		for _, x := range tags {
			if x == t {
				return true
			}
		}
		return false
	}
}

func TestMatchTruthTable(t *testing.T) {
	// Every expression over a, b, c against all 8 assignments; want[i] is
	// the result with a = bit 0, b = bit 1, c = bit 2 of i.
	tests := []struct {
		expr string
		want func(a, b, c bool) bool
	}{
		{"a", func(a, b, c bool) bool { return a }},
		{"!a", func(a, b, c bool) bool { return !a }},
		{"!!a", func(a, b, c bool) bool { return a }},
		{"a && b", func(a, b, c bool) bool { return a && b }},
		{"a || b", func(a, b, c bool) bool { return a || b }},
		{"a || b && c", func(a, b, c bool) bool { return a || (b && c) }},
		{"a && b || c", func(a, b, c bool) bool { return (a && b) || c }},
		{"(a || b) && c", func(a, b, c bool) bool { return (a || b) && c }},
		{"!a && b", func(a, b, c bool) bool { return !a && b }},
		{"!(a && b)", func(a, b, c bool) bool { return !(a && b) }},
		{"!a || !b && c", func(a, b, c bool) bool { return !a || (!b && c) }},
		{"a && !(b || c)", func(a, b, c bool) bool { return a && !(b || c) }},
		{"((a))&&((b)||c)", func(a, b, c bool) bool { return a && (b || c) }},
		{" a\t&&\nb ", func(a, b, c bool) bool { return a && b }},
		{"a && a", func(a, b, c bool) bool { return a }},
		{"a || !a", func(a, b, c bool) bool { return true }},
		{"a && !a", func(a, b, c bool) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			e := mustParse(t, tt.expr)
			for i := range 8 {
				a, b, c := i&1 != 0, i&2 != 0, i&4 != 0
				var tags []string
				for j, name := range []string{"a", "b", "c"} {
					if i&(1<<j) != 0 {
						tags = append(tags, name)
					}
				}
				want := tt.want(a, b, c)
				if got := e.Match(hasOf(tags...)); got != want {
					t.Errorf("Match with %v = %v, want %v", tags, got, want)
				}
				if got := e.MatchSorted(tags); got != want {
					t.Errorf("MatchSorted(%v) = %v, want %v", tags, got, want)
				}
			}
		})
	}
}

func TestParseNames(t *testing.T) {
	tests := []struct {
		expr     string
		wantTags []string
		wantStr  string
	}{
		{"vip", []string{"vip"}, "vip"},
		{"vip && (cn || hk) && !churned", []string{"churned", "cn", "hk", "vip"}, "vip && (cn || hk) && !churned"},
		{"lang:zh-CN || v1.2_beta", []string{"lang:zh-CN", "v1.2_beta"}, "lang:zh-CN || v1.2_beta"},
		{"b||a||b", []string{"a", "b"}, "b || a || b"},
		{"(a&&b)&&c", []string{"a", "b", "c"}, "a && b && c"},
		{"a&&(b&&c)", []string{"a", "b", "c"}, "a && (b && c)"},
		{"!(!a)", []string{"a"}, "a"},
		{"!(a||b)", []string{"a", "b"}, "!(a || b)"},
		{strings.Repeat("x", 64), []string{strings.Repeat("x", 64)}, strings.Repeat("x", 64)},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			e := mustParse(t, tt.expr)
			if got := e.Tags(); strings.Join(got, ",") != strings.Join(tt.wantTags, ",") {
				t.Errorf("Tags() = %v, want %v", got, tt.wantTags)
			}
			if got := e.String(); got != tt.wantStr {
				t.Errorf("String() = %q, want %q", got, tt.wantStr)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	deep := strings.Repeat("(", MaxDepth+1) + "a" + strings.Repeat(")", MaxDepth+1)
	okDeep := strings.Repeat("(", MaxDepth) + "a" + strings.Repeat(")", MaxDepth)
	manyTags := strings.TrimSuffix(strings.Repeat("t || ", MaxTerms+1), " || ")
	if _, err := Parse(okDeep); err != nil {
		t.Fatalf("nesting of exactly %d: %v", MaxDepth, err)
	}
	if _, err := Parse(strings.TrimSuffix(strings.Repeat("t||", MaxTerms), "||")); err != nil {
		t.Fatalf("exactly %d tags: %v", MaxTerms, err)
	}
	tests := []struct {
		expr    string
		wantPos int
		wantMsg string
	}{
		{"", 0, "empty expression"},
		{"  \t ", 4, "empty expression"},
		{"vip && ", 7, "expected a tag or '(' but found the end"},
		{"vip && (", 8, "expected a tag or '(' but found the end"},
		{"vip && )", 7, "expected a tag or '(' but found ')'"},
		{"(vip || cn))", 11, "unbalanced ')'"},
		{")", 0, "expected a tag or '(' but found ')'"},
		{"(vip || cn", 0, "unbalanced '('"},
		{"a && (b || (c)", 5, "unbalanced '('"},
		{"vip cn", 4, "expected '&&', '||' or the end, found a tag"},
		{"(vip cn)", 5, "expected '&&', '||' or ')', found a tag"},
		{"vip & cn", 4, "expected '&&', '||' or the end, found '&' (operators are '&&' and '||')"},
		{"vip | cn", 4, "expected '&&', '||' or the end, found '|' (operators are '&&' and '||')"},
		{"vip && && cn", 7, "expected a tag or '(' but found '&&'"},
		{"|| cn", 0, "expected a tag or '(' but found '||'"},
		{"vip && c#n", 8, "expected '&&', '||' or the end, found '#'"},
		{"vïp", 1, "expected '&&', '||' or the end, found byte 0xc3"},
		{"a && !", 6, "expected a tag or '(' but found the end"},
		{strings.Repeat("x", 65), 0, "tag longer than 64 bytes"},
		{strings.Repeat("a", MaxExprBytes+1), MaxExprBytes, "expression longer than 1024 bytes"},
		{manyTags, 320, "more than 64 tags"},
		{deep, MaxDepth, "nesting deeper than 16"},
		{strings.Repeat("!", MaxDepth+1) + "a", MaxDepth, "nesting deeper than 16"},
	}
	for _, tt := range tests {
		name := tt.expr
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		t.Run(name, func(t *testing.T) {
			e, err := Parse(tt.expr)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want an error", tt.expr, e)
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %v is %T, want *SyntaxError", err, err)
			}
			if se.Pos != tt.wantPos || se.Msg != tt.wantMsg {
				t.Errorf("error = {%d, %q}, want {%d, %q}", se.Pos, se.Msg, tt.wantPos, tt.wantMsg)
			}
			if !errors.Is(err, herald.ErrInvalidArgument) {
				t.Errorf("error %v does not wrap herald.ErrInvalidArgument", err)
			}
		})
	}
}

func TestSyntaxErrorMessage(t *testing.T) {
	_, err := Parse("vip && ")
	if got, want := err.Error(), "tag expression: expected a tag or '(' but found the end at byte 7"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"vip", true},
		{"lang:zh-CN", true},
		{"a.b_c-d:e9", true},
		{strings.Repeat("n", 64), true},
		{"", false},
		{strings.Repeat("n", 65), false},
		{"has space", false},
		{"a&b", false},
		{"a!", false},
		{"(a)", false},
		{"中文", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidName(tt.name); got != tt.want {
				t.Errorf("ValidName(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestMatchDevice(t *testing.T) {
	vipCN := mustParse(t, "vip && cn")
	tests := []struct {
		name     string
		aud      *internalv1.Audience
		expr     *Expr
		platform string
		tags     []string
		topics   []string
		want     bool
	}{
		{"nil audience", nil, nil, "ios", nil, nil, false},
		{"empty audience", &internalv1.Audience{}, nil, "ios", nil, nil, false},
		{"all", &internalv1.Audience{All: true}, nil, "ios", nil, nil, true},
		{"all, platform matches", &internalv1.Audience{All: true, Platform: "ios"}, nil, "ios", nil, nil, true},
		{"all, other platform", &internalv1.Audience{All: true, Platform: "android"}, nil, "ios", nil, nil, false},
		{"topic member", &internalv1.Audience{Topic: "news"}, nil, "ios", nil, []string{"a", "news", "z"}, true},
		{"topic non-member", &internalv1.Audience{Topic: "news"}, nil, "ios", []string{"news"}, []string{"a", "sport"}, false},
		{"topic, other platform", &internalv1.Audience{Topic: "news", Platform: "web"}, nil, "ios", nil, []string{"news"}, false},
		{"tags match", &internalv1.Audience{TagExpr: "vip && cn"}, vipCN, "ios", []string{"cn", "vip"}, nil, true},
		{"tags miss", &internalv1.Audience{TagExpr: "vip && cn"}, vipCN, "ios", []string{"cn"}, nil, false},
		{"tags, other platform", &internalv1.Audience{TagExpr: "vip && cn", Platform: "android"}, vipCN, "ios", []string{"cn", "vip"}, nil, false},
		{"tags, expr parsed here", &internalv1.Audience{TagExpr: "vip && cn"}, nil, "ios", []string{"cn", "vip"}, nil, true},
		{"tags, bad expr", &internalv1.Audience{TagExpr: "vip &&"}, nil, "ios", []string{"vip"}, nil, false},
		{"tags are not topics", &internalv1.Audience{TagExpr: "news"}, nil, "ios", nil, []string{"news"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MatchDevice(tt.aud, tt.expr, tt.platform, tt.tags, tt.topics); got != tt.want {
				t.Errorf("MatchDevice = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	e := mustParse(t, "vip && (cn || hk || tw) && !churned || staff")
	tags := []string{"android", "cn", "vip"}
	has := func(tag string) bool { return contains(tags, tag) }
	aud := &internalv1.Audience{TagExpr: e.String(), Platform: "android"}
	topics := []string{"news"}
	if n := testing.AllocsPerRun(100, func() { e.Match(has) }); n != 0 {
		t.Errorf("Match allocates %v times, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { MatchDevice(aud, e, "android", tags, topics) }); n != 0 {
		t.Errorf("MatchDevice allocates %v times, want 0", n)
	}
}

// FuzzParse checks that Parse never panics, that what it accepts is within
// the limits, and that String() of an expression parses again to an
// expression with the same normal form and the same truth values.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"vip", "vip && (cn || hk) && !churned", "a||b&&!c", "((a))", "!!a", "a &&", "(a", "a)", "a & b", "a\tb", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		e, err := Parse(src)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(src) {
				t.Fatalf("Parse(%q): bad error %#v", src, err)
			}
			return
		}
		if len(src) > MaxExprBytes || len(e.Tags()) > MaxTerms {
			t.Fatalf("Parse(%q) accepted past the limits", src)
		}
		for _, tag := range e.Tags() {
			if !ValidName(tag) {
				t.Fatalf("Parse(%q): invalid tag %q", src, tag)
			}
		}
		s := e.String()
		// The normal form may be longer than the source (spaces): it only
		// has to parse without the length limit.
		e2, err := parse(s, math.MaxInt)
		if err != nil {
			t.Fatalf("String() of %q = %q does not parse: %v", src, s, err)
		}
		if s2 := e2.String(); s2 != s {
			t.Fatalf("String() not stable: %q -> %q -> %q", src, s, s2)
		}
		tags := e.Tags()
		for mask := range uint64(64) {
			// A few assignments: tag i is set when bit i%6 of mask is.
			var set []string
			for i, tag := range tags {
				if mask&(1<<(i%6)) != 0 {
					set = append(set, tag)
				}
			}
			if e.MatchSorted(set) != e2.MatchSorted(set) {
				t.Fatalf("%q and %q disagree on %v", src, s, set)
			}
		}
	})
}

func BenchmarkMatch(b *testing.B) {
	e := mustParse(b, "vip && (cn || hk || tw) && !churned || staff")
	tags := []string{"android", "cn", "lang:zh", "region:east", "v2", "vip"}
	b.Run("func", func(b *testing.B) {
		has := func(tag string) bool { return contains(tags, tag) }
		b.ReportAllocs()
		for b.Loop() {
			e.Match(has)
		}
	})
	b.Run("sorted", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			e.MatchSorted(tags)
		}
	})
}
