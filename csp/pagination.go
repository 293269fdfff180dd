package csp

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
)

const (
	defaultPageSize = 1000
	// maxPages bounds a listing so a misbehaving server cannot loop us forever.
	maxPages = 10_000
)

// fetchPage fetches the items at [offset, offset+limit).
type fetchPage[T any] func(ctx context.Context, limit, offset int) ([]T, error)

// paginate follows _limit/_offset pages and returns every item, deduplicated
// by key (items with an empty key are kept). It never returns a truncated
// list: it fails when a page fails, when the server honours _limit but
// ignores _offset (a page repeats the previous one), or after pageLimit
// pages.
//
// A page longer than limit means the server ignores the parameters and sent
// everything. Once a page came back full, a shorter one is the last. A short
// first page is ambiguous (everything, or the server caps pages below
// limit), so one more request decides: empty or a repeat of page 1 means
// done, anything else teaches the server's page size.
func paginate[T any](ctx context.Context, limit, pageLimit int, fetch fetchPage[T], key func(T) string) ([]T, error) {
	var all []T
	seen := make(map[string]struct{})
	full := 0 // the size of a full page, once known
	firstN := 0
	prevFirst := ""
	offset := 0
	for page := 1; page <= pageLimit; page++ {
		items, err := fetch(ctx, limit, offset)
		if err != nil {
			return nil, fmt.Errorf("page %d (offset %d): %w", page, offset, err)
		}
		n := len(items)
		if n == 0 {
			return all, nil
		}
		first := key(items[0])
		if page > 1 && first != "" && first == prevFirst {
			if full == 0 {
				return all, nil // page 1 was short and comes again: it was everything
			}
			if page == 2 {
				// A full page 1 came again: either the server ignores both
				// parameters and holds exactly one page, or it honours
				// _limit but ignores _offset. Asking for one more item tells.
				probe, err := fetch(ctx, limit+1, 0)
				if err != nil {
					return nil, fmt.Errorf("page %d (probe): %w", page, err)
				}
				if len(probe) == len(all) {
					return all, nil
				}
			}
			return nil, fmt.Errorf("page %d repeats page %d: the server ignores _offset", page, page-1)
		}
		prevFirst = first
		for _, it := range items {
			k := key(it)
			if k != "" {
				if _, dup := seen[k]; dup {
					continue
				}
				seen[k] = struct{}{}
			}
			all = append(all, it)
		}
		if n > limit {
			return all, nil // the server ignores _limit: that was everything
		}
		if page == 1 {
			firstN = n
		}
		if full == 0 {
			switch {
			case n == limit:
				full = limit
			case page > 1:
				full = firstN // page 1 was short but not the end: the server's cap
			}
		}
		if full != 0 && n < full {
			return all, nil
		}
		offset += n
	}
	return nil, fmt.Errorf("more than %d pages of %d items", pageLimit, limit)
}

// pageURL returns base with the _limit and _offset query parameters set.
func pageURL(base string, limit, offset int) string {
	q := url.Values{}
	q.Set("_limit", strconv.Itoa(limit))
	q.Set("_offset", strconv.Itoa(offset))
	return base + "?" + q.Encode()
}
